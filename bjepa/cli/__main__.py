import sys

from bjepa.cli import main

sys.exit(main())
