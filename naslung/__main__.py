import sys

from naslung.cli.main import main

sys.exit(main())
