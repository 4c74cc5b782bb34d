"""Switchyard: the command line and the embedded stack launcher."""
