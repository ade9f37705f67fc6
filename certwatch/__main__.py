from certwatch.cli import main

raise SystemExit(main())
