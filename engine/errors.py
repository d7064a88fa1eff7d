"""Errors a user can fix. The command line prints them as one short paragraph and exits 2."""


class BadInput(Exception):
    """Bad run file, dataset or flag: the message names where and what would be valid."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 record: int | None = None, key: str | None = None):
        where = []
        if path:
            where.append(str(path) + (f":{line}" if line else ""))
        if record is not None:
            where.append(f"record {record}")
        if key:
            where.append(f"key '{key}'")
        self.path, self.line, self.record, self.key = path, line, record, key
        self.bare = message
        super().__init__((", ".join(where) + ": " if where else "") + message)


class Failed(Exception):
    """Something outside the input went wrong (the network, a download cut off): one clear paragraph, exit 1."""

    exit_code = 1
