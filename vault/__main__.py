"""`python -m vault` runs the sst-vault CLI."""

from vault.cli.main import console

if __name__ == "__main__":
    console()
