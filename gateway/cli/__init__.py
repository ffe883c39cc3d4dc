"""The ``onecard`` command line: the counter's tools and the server's entry points."""
