import sys

from llnm.cli import main

sys.exit(main())
