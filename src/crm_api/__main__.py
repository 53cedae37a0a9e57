from crm_api.cli import main

raise SystemExit(main())
