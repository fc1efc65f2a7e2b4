"""Test infrastructure that ships with dwcp: conformance suites, a fault proxy,
generated images.  Nothing in dwcp proper imports it except `dwcp demo`
(for its generated image)."""
