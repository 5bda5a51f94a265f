"""The language of a file, from its name: the ``language`` column of the manifest."""

from __future__ import annotations

__all__ = ["LANGUAGES", "LANGUAGE_BY_NAME", "language_of"]

LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".pyx": "cython",
    ".pxd": "cython",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".txt": "text",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".rs": "rust",
    ".go": "go",
    ".java": "java",
    ".kt": "kotlin",
    ".scala": "scala",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "csharp",
    ".swift": "swift",
    ".m": "objective-c",
    ".lua": "lua",
    ".pl": "perl",
    ".pm": "perl",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".ps1": "powershell",
    ".bat": "batch",
    ".sql": "sql",
    ".html": "html",
    ".htm": "html",
    ".xml": "xml",
    ".css": "css",
    ".scss": "css",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".ini": "ini",
    ".cfg": "ini",
    ".tex": "tex",
    ".r": "r",
    ".jl": "julia",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".ex": "elixir",
    ".erl": "erlang",
    ".clj": "clojure",
    ".dart": "dart",
    ".vim": "vim",
    ".el": "elisp",
    ".proto": "protobuf",
    ".cmake": "cmake",
    ".mk": "make",
    ".ipynb": "jupyter",
}

LANGUAGE_BY_NAME = {"Makefile": "make", "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake"}


def language_of(path: str) -> str:
    """Language of a file from its name: ``python``, ``markdown``… or ``text`` when unknown."""
    name = path.rsplit("/", 1)[-1]
    if name in LANGUAGE_BY_NAME:
        return LANGUAGE_BY_NAME[name]
    dot = name.rfind(".")
    if dot <= 0:
        return "text"
    return LANGUAGES.get(name[dot:].lower(), "text")
