from psfl.cli import main

raise SystemExit(main())
