import sys

from runtara_core.cli import main

sys.exit(main())
