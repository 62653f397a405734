from imgdedup.cli import main

raise SystemExit(main())
