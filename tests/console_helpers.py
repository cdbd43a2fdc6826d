"""A stand-in for a terminal on stderr, to see the progress bars that a captured run hides."""
import io


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True
