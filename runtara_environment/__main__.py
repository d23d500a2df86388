import sys

from runtara_environment.cli import main

sys.exit(main())
