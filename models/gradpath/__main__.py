import sys

from models.gradpath.report import main

sys.exit(main())
