"""Wire format: frame header layout, constants and (later) sans-IO sessions."""
