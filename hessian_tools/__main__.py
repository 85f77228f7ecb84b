from hessian_tools.cli import main

raise SystemExit(main())
