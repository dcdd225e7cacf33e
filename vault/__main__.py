"""`python -m vault` runs the sst-vault CLI."""

from vault.cli.main import main

if __name__ == "__main__":
    main()
