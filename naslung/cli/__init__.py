"""The ``naslung`` command line: one thin module per subcommand (parse, call the library, print)."""
