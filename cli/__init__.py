"""flowkit's command line, installed as the import package ``flowkit_cli``."""
