# Empty on purpose: the extensions are imported only through dwcp._backend.
