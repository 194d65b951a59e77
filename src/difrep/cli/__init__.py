"""The difrep command line."""
