import sys

from statex.cli import main

sys.exit(main())
