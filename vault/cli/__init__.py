"""The click layer: parse options, call the library, print the result. No logic lives here."""
