from finsent.cli import main

raise SystemExit(main())
