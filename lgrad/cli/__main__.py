import sys

from lgrad.cli import main

sys.exit(main())
