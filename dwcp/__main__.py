from dwcp.cli.main import main

raise SystemExit(main())
