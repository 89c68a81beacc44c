import sys

from fastconv.tools.cli import main

sys.exit(main())
