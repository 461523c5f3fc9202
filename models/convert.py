"""`python -m models.convert`: the command users know; the converter lives in models/official/convert.py."""
import sys

from models.official.convert import main

if __name__ == "__main__":
    sys.exit(main())
