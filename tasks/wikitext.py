"""Wikitext to plain text with mwparserfromhell, keeping sections, links, categories and images.

Templates, references, tables, comments, magic words and file links are removed; the anchor text
of links is kept. Most of an article's markup by volume is templates (infoboxes, citations) and
tables, and mwparserfromhell spends most of its time building nodes for them only for us to drop
them; so they are cut out first by a bracket scanner that reads each template just once to take
what is kept from it (the lead image of an infobox, disambiguation markers), and mwparserfromhell
parses what remains.

    cleaner = Cleaner(siteinfo)
    page = cleaner.clean(wikitext)      # CleanPage: text, sections, links, categories, images
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import quote

import mwparserfromhell
from mwparserfromhell.nodes import (
    Argument,
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Template,
    Text,
    Wikilink,
)
from mwparserfromhell.wikicode import Wikicode

from tasks.wikixml import SiteInfo

FILE_NS, CATEGORY_NS = 6, 14

# tags whose contents are not prose: dropped with everything inside them
DROPPED_TAGS = {
    "ref",
    "references",
    "math",
    "chem",
    "ce",
    "score",
    "timeline",
    "graph",
    "imagemap",
    "inputbox",
    "templatedata",
    "categorytree",
    "syntaxhighlight",
    "source",
    "table",
    "gallery",
    "mapframe",
    "maplink",
    "hiero",
    "noinclude",
    "templatestyles",
    "section",
    "indicator",
    "charinsert",
}
LINE_BREAK_TAGS = {"br", "p", "div", "li", "dd", "dt", "tr"}

# templates that mark a disambiguation page on the English Wikipedia and its copies
DISAMBIGUATION_TEMPLATES = {
    "disambiguation",
    "disambig",
    "dab",
    "disamb",
    "dis",
    "hndis",
    "geodis",
    "numberdis",
    "mathdab",
    "letter-numbercombdisambig",
    "roaddis",
    "schooldis",
    "shipindex",
    "disambiguation cleanup",
    "set index article",
    "surname",
    "given name",
    "place name disambiguation",
    "species latin name disambiguation",
}

# [[prefix:...]] prefixes that point to sister projects: their anchor text stays, the link does not
INTERWIKI = {
    "w",
    "wikipedia",
    "wikt",
    "wiktionary",
    "commons",
    "meta",
    "m",
    "s",
    "wikisource",
    "q",
    "wikiquote",
    "b",
    "wikibooks",
    "n",
    "wikinews",
    "v",
    "wikiversity",
    "species",
    "d",
    "wikidata",
    "mw",
    "voy",
    "wikivoyage",
    "wikispecies",
    "foundation",
    "wmf",
}
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]+)*$|^simple$")

IMAGE_OPTION = re.compile(
    r"^\s*(thumb|thumbnail|frame|framed|frameless|border|left|right|center|centre|none|baseline|middle|sub"
    r"|super|top|text-top|bottom|text-bottom|upright(\s*=?\s*[\d.]+)?|\d*x?\d+\s*px|(alt|link|page|lang|class"
    r"|upright|thumb|thumbnail)\s*=.*)\s*$",
    re.IGNORECASE,
)
IMAGE_EXTENSION = r"(?:jpe?g|png|gif|svg|tiff?|webp|xcf|bmp|ogv|webm)"
INFOBOX_IMAGE = re.compile(
    r"\|\s*(?:image|image_name|img|photo|picture|logo|image_file)\d*\s*=\s*(?:\[\[)?(?:[^|\]\n:]*:)?"
    rf"([^|\]\n{{}}]+?\.{IMAGE_EXTENSION})\s*(?=\||\]|\n|\}}\}})",
    re.IGNORECASE,
)
INFOBOX_CAPTION = re.compile(r"\|\s*(?:caption|image_caption|imagecaption|image caption)\d*\s*=\s*([^|\n]*)")
MAGIC_WORD = re.compile(r"__[A-Z]+(?:_[A-Z]+)*__")
COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
REF = re.compile(r"<ref\b[^>/]*/>|<ref\b[^>]*>.*?(?:</ref\s*>|$)", re.DOTALL | re.IGNORECASE)
BRACKETS = re.compile(r"\{\{|\}\}|^[ \t:]*\{\||^[ \t]*\|\}", re.MULTILINE)
TEMPLATE_NAME = re.compile(r"\{\{\s*([^|{}\n]*)")
DISAMBIGUATION_WORD = "__DISAMBIG__"

BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")
EMPTY_PARENS = re.compile(r"\s?\((?:[\s,;:–-]|&nbsp;)*\)")
SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:!?])")
SPACES = re.compile(r"[ \t\u00a0]{2,}")


@dataclass
class CleanPage:
    text: str
    sections: list[dict] = field(default_factory=list)
    links: list[dict] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    is_disambiguation: bool = False


def commons_url(file_name: str) -> str:
    """The upload URL of a file on Wikimedia Commons (its path is derived from the name's MD5)."""
    name = file_name.strip().replace(" ", "_")
    name = name[:1].upper() + name[1:]
    digest = hashlib.md5(name.encode()).hexdigest()
    return f"https://upload.wikimedia.org/wikipedia/commons/{digest[0]}/{digest[:2]}/{quote(name)}"


def cut_templates_and_tables(text: str) -> tuple[str, list[str]]:
    """Remove every balanced {{template}} and {| table |}; returns the rest and the removed templates.

    An opening bracket that is never closed stays as text, as MediaWiki would show it.
    """
    kept: list[str] = []
    removed: list[str] = []
    stack: list[str] = []
    outer_start = 0
    last = 0
    for match in BRACKETS.finditer(text):
        token = match.group().strip(" \t:")
        if token in ("{{", "{|"):
            if not stack:
                outer_start = match.start()
            stack.append(token)
        elif stack and stack[-1] == ("{{" if token == "}}" else "{|"):
            stack.pop()
            if not stack:
                kept.append(text[last:outer_start])
                removed.append(text[outer_start : match.end()])
                last = match.end()
    if stack:
        # unbalanced: keep the unclosed remainder, minus its stray brackets
        kept.append(text[last:outer_start])
        rest, inner = cut_templates_and_tables(text[outer_start + 2 :])
        kept.append(rest)
        removed.extend(inner)
    else:
        kept.append(text[last:])
    return "".join(kept), removed


class Cleaner:
    """Cleans the wikitext of one wiki; namespace names come from its siteinfo."""

    def __init__(self, siteinfo: SiteInfo, *, disambiguation_templates: set[str] | None = None) -> None:
        self.prefixes = siteinfo.prefixes()
        self.disambiguation_templates = {
            t.lower() for t in (DISAMBIGUATION_TEMPLATES | set(disambiguation_templates or ()))
        }

    def clean(self, wikitext: str) -> CleanPage:
        page = CleanPage(text="")

        # comments, references and magic words first: they may hide brackets
        text = COMMENT.sub("", wikitext)
        if DISAMBIGUATION_WORD in text:
            page.is_disambiguation = True
        text = MAGIC_WORD.sub("", text)
        text = REF.sub("", text)

        # templates and tables: scanned once, keeping what we need from them
        text, templates = cut_templates_and_tables(text)
        for template in templates:
            self._read_template(template, page)

        # the rest through mwparserfromhell, section by section
        code = mwparserfromhell.parse(text, skip_style_tags=False)
        self._emit_sections(code, page)
        page.categories = list(dict.fromkeys(page.categories))
        if any("disambiguation" in c.lower() for c in page.categories):
            page.is_disambiguation = True
        return page

    # templates

    def _read_template(self, template: str, page: CleanPage) -> None:
        name = TEMPLATE_NAME.match(template)
        if name and name.group(1).strip().lower().replace("_", " ") in self.disambiguation_templates:
            page.is_disambiguation = True
        if "=" not in template or "." not in template:
            return
        captions = INFOBOX_CAPTION.findall(template)
        for number, match in enumerate(INFOBOX_IMAGE.finditer(template)):
            caption = captions[number] if number < len(captions) else ""
            self._add_image(page, match.group(1), self._plain(caption))

    # images, categories, links

    def _add_image(self, page: CleanPage, name: str, caption: str) -> None:
        name = name.strip().replace("_", " ")
        if not name or any(i["file"] == name for i in page.images):
            return
        page.images.append({"file": name, "caption": caption.strip(), "url": commons_url(name)})

    def _namespace_of(self, title: str) -> tuple[int, str]:
        """(namespace key, rest) of a link title; 0 for articles, -100 for interlanguage, -101 interwiki."""
        if ":" not in title:
            return 0, title
        prefix, rest = title.split(":", 1)
        key = prefix.strip().lower()
        if key in self.prefixes:
            return self.prefixes[key], rest
        if key in INTERWIKI:
            return -101, rest
        if LANGUAGE_CODE.match(key):
            return -100, rest
        return 0, title

    def _wikilink(self, node: Wikilink, page: CleanPage, out: list[str]) -> None:
        title = str(node.title).strip()
        leading_colon = title.startswith(":")
        namespace, rest = self._namespace_of(title.lstrip(":"))
        if namespace == FILE_NS and not leading_colon:
            params = str(node.text).split("|") if node.text is not None else []
            caption = next((p for p in reversed(params) if not IMAGE_OPTION.match(p)), "")
            self._add_image(page, rest, self._plain(caption))
            return
        if namespace == CATEGORY_NS and not leading_colon:
            page.categories.append(rest.strip().replace("_", " "))
            return
        if namespace == -100 and not leading_colon:
            return  # interlanguage link: no text on the page
        if node.text is not None:
            anchor_parts: list[str] = []
            self._emit(node.text, page, anchor_parts)
            anchor = "".join(anchor_parts)
        else:
            anchor = title.lstrip(":")
            if namespace == -101:
                anchor = rest
        out.append(anchor)
        target = title.lstrip(":").split("#", 1)[0].strip().replace("_", " ")
        if target and namespace >= 0:
            page.links.append({"target": target, "anchor": anchor.strip()})

    def _gallery(self, node: Tag, page: CleanPage) -> None:
        for line in str(node.contents).splitlines():
            name, _, caption = line.strip().partition("|")
            if not name:
                continue
            namespace, rest = self._namespace_of(name)
            if namespace not in (0, FILE_NS):
                continue
            if re.search(rf"\.{IMAGE_EXTENSION}$", rest.strip(), re.IGNORECASE):
                self._add_image(page, rest, self._plain(caption))

    # text

    def _plain(self, wikitext: str) -> str:
        """Plain text of a short piece of wikitext (a caption), links reduced to their anchors."""
        if not wikitext.strip():
            return ""
        scratch = CleanPage(text="")
        out: list[str] = []
        self._emit(mwparserfromhell.parse(wikitext), scratch, out)
        return SPACES.sub(" ", "".join(out)).strip()

    def _emit(self, code: Wikicode, page: CleanPage, out: list[str]) -> None:
        for node in code.nodes:
            kind = type(node)
            if kind is Text:
                out.append(node.value)
            elif kind is Wikilink:
                self._wikilink(node, page, out)
            elif kind is Tag:
                tag = str(node.tag).strip().lower()
                if tag == "gallery":
                    self._gallery(node, page)
                elif tag in DROPPED_TAGS:
                    continue
                elif node.contents is not None and not node.self_closing:
                    self._emit(node.contents, page, out)
                elif tag in LINE_BREAK_TAGS:
                    out.append("\n")
            elif kind is HTMLEntity:
                out.append(node.normalize())
            elif kind is ExternalLink:
                if node.title is not None:
                    self._emit(node.title, page, out)
            elif kind is Heading:
                # a heading inside some other markup: keep its words
                self._emit(node.title, page, out)
            elif kind in (Template, Argument, Comment):
                continue

    def _emit_sections(self, code: Wikicode, page: CleanPage) -> None:
        sections: list[tuple[str, int, list[str]]] = [("", 1, [])]
        for node in code.nodes:
            if type(node) is Heading:
                title: list[str] = []
                self._emit(node.title, page, title)
                sections.append((tidy("".join(title)).replace("\n", " "), node.level, []))
            else:
                self._emit(Wikicode([node]), page, sections[-1][2])
        pieces: list[str] = []
        offset = 0
        for title, level, parts in sections:
            body = tidy("".join(parts))
            if not body:
                continue
            piece = f"{title}\n{body}" if title else body
            if pieces:
                offset += 2  # the blank line between sections
            page.sections.append(
                {"title": title, "level": level, "start": offset, "end": offset + len(piece)}
            )
            pieces.append(piece)
            offset += len(piece)
        page.text = "\n\n".join(pieces)


def tidy(text: str) -> str:
    """Whitespace and punctuation left over once markup is gone."""
    text = EMPTY_PARENS.sub("", text)
    text = SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = SPACES.sub(" ", text)
    lines = [line.strip() for line in text.split("\n")]
    text = "\n".join(line for line in lines if line.strip("*#:;'\"|!-= "))
    return BLANK_LINES.sub("\n", text).strip()
