"""Reading a catalog file strictly: bytes to a plain document of dicts, lists and scalars.

`read_text` refuses what is not one UTF-8 text of bounded size. `compose` builds the document
straight from libyaml's parser events (a loop, not recursion) and refuses, as problems with their
line numbers: duplicate keys (PyYAML would keep the last one silently), anchors and aliases (an
alias bomb would expand to gigabytes), tags beyond the plain scalars, non-string keys (YAML 1.1
reads `no:` as False), YAML 1.1 integer forms nobody means (`010` as octal), a second document,
and nesting deeper than MAX_NESTING. Building from events was the fastest robust way measured:
about 3 s of libyaml for 100,000 customers, against 17 s for its composer and 26 s for `load`.

operators/catalog.py then checks the document's content.
"""

from __future__ import annotations

import codecs
import os
import re
from datetime import date, datetime
from typing import Any

import yaml


class CatalogError(Exception):
    """The catalog is unusable. `problems` lists each one as 'path: message'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"catalog has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)
        )


# A file larger than this is a mistaken path (a log, a dump), not a catalog.
MAX_CATALOG_BYTES = 256 * 1024 * 1024
MAX_NESTING = 64
# Past this many, problems are counted, not listed: a 256 MiB file of errors must not become
# gigabytes of messages.
MAX_PROBLEMS = 1000
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")
# The only unquoted whole numbers read: YAML 1.1 would read 010 as octal 8, 1:30 as 90 and 1_0
# as 10, and an int of 4301 digits raises. None of them is what an editor meant.
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,39})")


def show(value: Any) -> str:
    """A value for a message: bounded in length whatever it is (repr of a 4301-digit int raises;
    of a deep list, recurses)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else f"{value[:60]!r}... ({len(value)} characters)"
    if isinstance(value, bool) or value is None:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 128 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


# -- reading the file ------------------------------------------------------------------------------

def read_text(path: str) -> str:
    limit = f"the limit of {MAX_CATALOG_BYTES} bytes ({MAX_CATALOG_BYTES / 2**20:g} MiB)"
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_CATALOG_BYTES:
                raise CatalogError([f"{path}: the file is {size} bytes, over {limit}"])
            # Read one byte more than allowed: a pipe or device has no size to check up front.
            data = fh.read(MAX_CATALOG_BYTES + 1)
    except OSError as exc:
        raise CatalogError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except ValueError as exc:  # a path with a NUL byte in it
        raise CatalogError([f"{path}: cannot read: {exc}"]) from exc
    if len(data) > MAX_CATALOG_BYTES:
        raise CatalogError([f"{path}: the file is over {limit}"])
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise CatalogError([f"{path}: the file is UTF-32; save it as UTF-8"])
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise CatalogError([f"{path}: the file is UTF-16; save it as UTF-8"])
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CatalogError([f"{path}: not valid UTF-8: byte 0x{data[exc.start]:02x} at line "
                            f"{line}; save the file as UTF-8"]) from exc
    if "\x00" in text:
        # UTF-16 without a byte order mark decodes as UTF-8 with a NUL after every character.
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise CatalogError([f"{path}: NUL character at line {line}: is the file UTF-16? "
                            "save it as UTF-8"])
    return text


# -- strict YAML -----------------------------------------------------------------------------------

# libyaml's parser when PyYAML was built with it: the pure-Python one takes about 30 times longer.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVERS: dict[Any, list[tuple[str, re.Pattern[str]]]] = yaml.SafeLoader.yaml_implicit_resolvers
_T = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP, _MERGE = (
    _T + "str", _T + "int", _T + "float", _T + "bool", _T + "null", _T + "timestamp",
    _T + "merge")
# The plain scalars `=` and `!`, which PyYAML resolves to tags it then cannot construct.
_AS_TEXT = (_T + "value", _T + "yaml")
_MAP_TAGS = (None, "!", _T + "map")
_SEQ_TAGS = (None, "!", _T + "seq")


class _Refused:
    """Stands in for a value the loader refused (an alias, an unreadable scalar): the parser
    then reports nothing more at that path, one problem per mistake."""

    def __repr__(self) -> str:
        return "a refused value"


_REFUSED = _Refused()


def _label(key: str) -> str:
    if _PLAIN_KEY.fullmatch(key):
        return key
    return repr(key) if len(key) <= 40 else repr(key[:40]) + "..."


def join_path(where: str, key: str) -> str:
    return f"{where}.{_label(key)}" if where else _label(key)


def _where(stack: list[list[Any]]) -> str:
    """The YAML path of the node being read: the key or index each open collection is at."""
    out = ""
    for frame in stack:
        container = frame[0]
        if container.__class__ is dict:
            key = frame[1]
            if key is not None:  # None: the frame is reading a key, which has no path yet
                out = join_path(out, key)
        else:
            out = f"{out}[{len(container)}]"
    return out


def compose(text: str, name: str) -> tuple[Any, list[str], frozenset[str]]:
    """The document as plain dicts, lists and scalars, with the problems found in its structure
    and the paths of the values it refused.

    Built from parser events rather than nodes: an alias is an event here, refused before
    anything is expanded, and the walk is a loop over an explicit stack, so no nesting reaches
    Python's recursion limit (libyaml's own parser keeps a stack too).
    """
    problems: list[str] = []
    refused: set[str] = set()
    constructor = yaml.constructor.SafeConstructor()
    # A frame: [container, key being read (None: a key is expected next), keep the value,
    # {key: line} seen so far, line of the collection, refused collection]
    stack: list[list[Any]] = []
    root: list[Any] = []
    documents = 0
    # Looked up once: the loop below runs per event, millions of times for a large catalog.
    scalar_event = yaml.ScalarEvent
    mapping_start, mapping_end = yaml.MappingStartEvent, yaml.MappingEndEvent
    sequence_start, sequence_end = yaml.SequenceStartEvent, yaml.SequenceEndEvent
    stream_end = yaml.StreamEndEvent

    def problem(message: str, at: str | None = None) -> None:
        where = _where(stack) if at is None else at
        problems.append(f"{where or 'catalog'}: {message}")
        if len(problems) >= MAX_PROBLEMS:
            problems.append(f"{name}: stopped reading after {MAX_PROBLEMS} problems")
            raise _Stop

    def refuse(message: str) -> Any:
        # A refused key drops its entry (the parser may then report it missing); a refused
        # value silences the parser at its path.
        if not (stack and stack[-1][0].__class__ is dict and stack[-1][1] is None):
            refused.add(_where(stack))
        problem(message)
        return _REFUSED

    # The parser driven directly rather than through yaml.parse: its generator and check_event
    # call cost as much again as the parsing itself.
    parser = None
    try:
        # inside the try: the pure-Python reader checks every character as it is created
        parser = _LOADER(text)
        next_event = parser.get_event
        while True:
            event: Any = next_event()
            cls = event.__class__
            if cls is scalar_event:
                if event.anchor is not None:
                    problem(f"anchors are not allowed (&{event.anchor} at line "
                            f"{event.start_mark.line + 1}): write each value out")
                tag = event.tag
                value = event.value
                if tag is None or tag == "!":
                    tag = _STR
                    if event.implicit[0]:  # plain, not quoted: YAML 1.1 guesses its type
                        for candidate, regexp in _RESOLVERS.get(value[:1], ()):
                            if regexp.match(value):
                                tag = candidate
                                break
                if tag != _STR:
                    value = _scalar(tag, value, event, constructor, refuse)
            elif cls is mapping_start or cls is sequence_start:
                line = event.start_mark.line + 1
                if event.anchor is not None:
                    problem(f"anchors are not allowed (&{event.anchor} at line {line}): write "
                            "each value out")
                bad_tag = event.tag not in (_MAP_TAGS if cls is mapping_start else _SEQ_TAGS)
                if bad_tag:
                    refuse(f"the tag {event.tag} at line {line} is not allowed")
                if len(stack) >= MAX_NESTING:
                    problem(f"nested more than {MAX_NESTING} levels deep at line {line}")
                    raise _Stop
                container: Any = {} if cls is mapping_start else []
                stack.append([container, None, True, {}, line, bad_tag])
                continue
            elif cls is mapping_end or cls is sequence_end:
                frame = stack.pop()
                value = _REFUSED if frame[5] else frame[0]
            elif cls is yaml.AliasEvent:
                value = refuse(f"aliases are not allowed (*{event.anchor} at line "
                               f"{event.start_mark.line + 1}): write the value out")
            elif cls is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    problem(f"a second YAML document starts at line {event.start_mark.line + 1}"
                            "; a catalog is one document", at="catalog")
                    raise _Stop
                continue
            elif cls is stream_end:
                break
            else:  # stream start, document end
                continue
            if not stack:
                root.append(value)
                continue
            frame = stack[-1]
            container = frame[0]
            if container.__class__ is not dict:
                container.append(value)
            elif frame[1] is None:  # `value` is a key
                frame[1] = value if value.__class__ is str else "?"
                frame[2] = False
                if value.__class__ is str:
                    line = event.start_mark.line + 1
                    seen = frame[3]
                    first = seen.get(value)
                    if first is None:
                        seen[value] = line
                        frame[2] = True
                    else:
                        problem(f"duplicate key {show(value)} (lines {first} and {line}): "
                                "only one may be given")
                elif value is not _REFUSED:
                    frame[1] = None  # the path of a key is its mapping's
                    problem(_key_problem(value, frame[4]))
                    frame[1] = "?"
            else:
                if frame[2]:
                    container[frame[1]] = value
                frame[1] = None
    except _Stop:
        return None, problems, frozenset(refused)
    except yaml.YAMLError as exc:
        problems.append(f"{name}: not valid YAML: {_yaml_error(exc, text)}")
        return None, problems, frozenset(refused)
    finally:
        if parser is not None:
            parser.dispose()
    return (root[0] if root else None), problems, frozenset(refused)


class _Stop(Exception):
    """Reading stops: too deep, too many problems, a second document."""


def _scalar(tag: str, text: str, event: Any, constructor: yaml.constructor.SafeConstructor,
            refuse: Any) -> Any:
    line = event.start_mark.line + 1
    if tag == _INT:
        # Only plain decimal digits: a catalog's only whole number is a count of days, and
        # YAML 1.1's other spellings (octal 010, 1_000, 1:30) read as something else.
        if _PLAIN_INT.fullmatch(text):
            return int(text)
        return refuse(f"the unquoted number {text[:40]} at line {line} is not a plain whole "
                      "number (YAML 1.1 would read it as octal, hex or base 60); quote it or "
                      "write decimal digits")
    if tag in (_NULL, _FLOAT, _BOOL, _TIMESTAMP) or tag in (_STR, *_AS_TEXT):
        if tag == _STR or tag in _AS_TEXT:
            return text
        try:
            node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark)
            return {_NULL: constructor.construct_yaml_null,
                    _FLOAT: constructor.construct_yaml_float,
                    _BOOL: constructor.construct_yaml_bool,
                    _TIMESTAMP: constructor.construct_yaml_timestamp}[tag](node)
        except (ValueError, KeyError, OverflowError, AttributeError):
            # 2026-13-01 looks like a timestamp to YAML and then fails as a date
            kind = tag[len(_T):]
            return refuse(f"the unquoted value {text[:40]} at line {line} is not a valid {kind}")
    if tag == _MERGE:
        return refuse(f"merge keys (<<) are not allowed (line {line}): write the keys out")
    return refuse(f"the tag {tag} at line {line} is not allowed")


def _key_problem(key: Any, line: int) -> str:
    if isinstance(key, bool | int | float) or key is None:
        return (f"mapping key {show(key)} (in the mapping at line {line}) is not a string: "
                "YAML 1.1 reads unquoted yes/no/on/off as booleans and digits as numbers; "
                "quote the key")
    return f"mapping key {show(key)} (in the mapping at line {line}) is not a string"


def _yaml_error(exc: yaml.YAMLError, text: str) -> str:
    """PyYAML's message on one line, with the line number a text editor shows."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = ": ".join(p for p in (exc.context, exc.problem) if p)
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(exc, yaml.reader.ReaderError):
        # libyaml counts the position in UTF-8 bytes, the pure-Python reader in characters
        position = exc.position
        if _LOADER is not yaml.SafeLoader:
            position = len(text.encode("utf-8", "replace")[:position].decode("utf-8", "ignore"))
        line = text.count("\n", 0, position) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"unacceptable character #x{character:04x}: {exc.reason} (line {line})"
    return str(exc).replace("\n", " ")

