import sys

from filerexec.cli import main

sys.exit(main())
