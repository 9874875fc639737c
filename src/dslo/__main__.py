import sys

from dslo.cli import main

sys.exit(main())
