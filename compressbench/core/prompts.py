"""Prompt templates from the ``prompts/`` folder, each with a content-hash id.

A prompt file is YAML, ``prompts/<name>.yaml``, with either chat parts (``system`` and/or
``user``) or a raw ``text`` part (used as a scoring prefix), plus an optional ``description``.
A chat prompt may also have a ``completion`` part: its plain-text form for a model without a
chat template (a base model), written so that the model's continuation is the wanted reply.
:meth:`Prompt.render_completion` uses it, or else joins the system and user parts with a
blank line.
Placeholders are ``{name}`` fields filled by :meth:`Prompt.render_chat` / :meth:`Prompt.render_text`
(``str.format`` syntax; literal braces are written ``{{`` and ``}}``).

The id is ``<name>@<first 12 hex of sha256 of the file's bytes>``: any edit changes it, so run
records and cache keys always say exactly which wording produced them.
"""

from __future__ import annotations

import functools

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from compressbench.core.errors import ConfigError
from compressbench.core.types import Chat
from compressbench.core.paths import PACKAGE_DIR

_FORMATTER = string.Formatter()


def prompts_dir() -> Path:
    """The packaged prompts folder (``prompts/`` at the project root, linked into the package)."""
    return PACKAGE_DIR / "prompts"


@dataclass(frozen=True)
class Prompt:
    name: str
    id: str
    system: str | None = None
    user: str | None = None
    text: str | None = None
    description: str = ""
    completion: str | None = None

    @functools.cached_property
    def fields(self) -> frozenset[str]:
        """The placeholder names the template uses."""
        names: set[str] = set()
        for part in (self.system, self.user, self.text, self.completion):
            if part:
                names.update(f for _, f, _, _ in _FORMATTER.parse(part) if f)
        return frozenset(names)

    def _fill(self, part: str, values: dict[str, str]) -> str:
        missing = {f for _, f, _, _ in _FORMATTER.parse(part) if f} - values.keys()
        if missing:
            raise ConfigError(f"prompt {self.name!r} needs values for {sorted(missing)}")
        return part.format(**values)

    def render_chat(self, **values: str) -> list[dict[str, str]]:
        """The chat messages (system, then user) with placeholders filled."""
        if self.user is None:
            raise ConfigError(f"prompt {self.name!r} has no 'user' part; it is not a chat prompt")
        chat: list[dict[str, str]] = []
        if self.system:
            chat.append({"role": "system", "content": self._fill(self.system, values)})
        chat.append({"role": "user", "content": self._fill(self.user, values)})
        return chat

    def render_completion(self, **values: str) -> str:
        """The plain-text form of a chat prompt, for a model without a chat template.

        The ``completion`` part if the file has one; else the system and user parts joined by a
        blank line (``"<system>\n\n<user>"``).
        """
        if self.user is None:
            raise ConfigError(f"prompt {self.name!r} has no 'user' part; it is not a chat prompt")
        if self.completion is not None:
            return self._fill(self.completion, values)
        return "\n\n".join(m["content"] for m in self.render_chat(**values))

    def render_text(self, **values: str) -> str:
        """The raw text part with placeholders filled (for scoring prefixes)."""
        if self.text is None:
            raise ConfigError(f"prompt {self.name!r} has no 'text' part; it is a chat prompt")
        return self._fill(self.text, values)


def load_prompt(name_or_path: str | Path) -> Prompt:
    """Load a prompt by name (from ``prompts/``) or from a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = prompts_dir() / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in prompts_dir().glob("*.yaml"))
        raise ConfigError(f"no prompt {str(name_or_path)!r} (looked for {p}); known prompts: {known}")
    raw = p.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"prompt file {p} is not valid UTF-8 YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"prompt file {p} must be a YAML mapping with system/user or text parts")
    unknown = set(data) - {"system", "user", "text", "description", "completion"}
    if unknown:
        raise ConfigError(f"prompt file {p} has unknown keys {sorted(unknown)}; "
                          "allowed: system, user, text, completion, description")
    if data.get("completion") is not None and data.get("user") is None:
        raise ConfigError(f"prompt file {p} has a 'completion' part but no 'user' part; 'completion' is the "
                          "plain-text form of a chat prompt")
    if data.get("user") is None and data.get("text") is None:
        raise ConfigError(f"prompt file {p} needs a 'user' part (chat) or a 'text' part (scoring)")
    name = p.stem
    return Prompt(
        name=name,
        id=f"{name}@{hashlib.sha256(raw).hexdigest()[:12]}",
        system=data.get("system"),
        user=data.get("user"),
        text=data.get("text"),
        description=data.get("description", ""),
        completion=data.get("completion"),
    )


def chat_text(chat: Chat) -> str:
    """All message contents joined, for token accounting of baselines and logs."""
    return "\n".join(m["content"] for m in chat)
