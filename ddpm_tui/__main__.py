from ddpm_tui.cli import main

raise SystemExit(main())
