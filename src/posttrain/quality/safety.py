"""Personal data and harmful-compliance detection for training data (`data filter --safety`).

Personal data (`find_pii`, `redact`): regular expressions find candidates, then checks that a
regex cannot express reject look-alikes:

  kind          example                               check after the regex
  email         jane.doe@mail.example.org             a dot-separated domain with a 2+ letter TLD
  phone         +44 20 7946 0958, (415) 555-2671      digit count; a + prefix, (area code), US 3-3-4
                                                      grouping or a national 0 prefix; dots only in
                                                      US 3-3-4 (so versions and IPs are not phones)
  card          4111 1111 1111 1111                   13-19 digits, Luhn checksum, known issuer prefix
  iban          GB82 WEST 1234 5698 7654 32           ISO 13616 mod-97 checksum
  ssn           123-45-6789 (US)                      dashed form only, invalid area/group/serial out
  api_key       sk-..., ghp_..., AIza..., hf_...,     key shape (digits and letters, long enough)
                password = ...
  aws_key       AKIA................ (16 more)       prefix + 16 upper-case letters/digits
  private_key   -----BEGIN ... PRIVATE KEY----- block
  token         Bearer <token>, JWTs (eyJ..eyJ..sig)  token of 16+ characters with a digit

Harmful compliance (`harm_categories`, `harmful_answered`): a keyword/regex classifier flags a
prompt as asking for serious harm (weapons, hard drugs, malware, violence, self-harm, fraud,
sexual content with minors, terrorism, stalking); the example is unsafe when a response the
trainer learns from does *not* refuse. This is a coarse screen with known gaps (paraphrase,
other languages, obfuscation) - see docs/data-quality.md for what it can and cannot promise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .heuristics import is_refusal

PLACEHOLDERS = {
    "email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]", "ssn": "[SSN]",
    "api_key": "[API_KEY]", "aws_key": "[AWS_KEY]", "private_key": "[PRIVATE_KEY]", "token": "[TOKEN]",
}


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    text: str


# ----------------------------------------------------------------------------------------------
# Checks that regexes cannot express

def luhn_valid(digits: str) -> bool:
    """Luhn mod-10: double every second digit from the right, digits of products summed."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        d = int(char)
        if position % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_issuer(digits: str) -> bool:
    """Issuer prefixes (IIN) and lengths of the major networks; cuts random Luhn passes 10x."""
    n, two, four = len(digits), int(digits[:2]), int(digits[:4])
    return ((digits[0] == "4" and n in (13, 16, 19))                             # Visa
            or (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16             # Mastercard
            or two in (34, 37) and n == 15                                        # American Express
            or (digits.startswith("6011") or two == 65 or 644 <= int(digits[:3]) <= 649) and n in (16, 19)
            or 3528 <= four <= 3589 and n in (16, 19)                            # JCB
            or (two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305) and n in (14, 16)  # Diners
            or two == 62 and 16 <= n <= 19)                                       # UnionPay


def _is_card(match: re.Match) -> bool:
    digits = re.sub(r"\D", "", match.group())
    return 13 <= len(digits) <= 19 and _card_issuer(digits) and luhn_valid(digits)


def iban_valid(text: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, value mod 97 == 1."""
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _is_iban(match: re.Match) -> bool:
    return iban_valid(match.group())


def _is_phone(match: re.Match) -> bool:
    text = match.group()
    digits = re.sub(r"\D", "", text)
    if text.startswith("+"):
        return 8 <= len(digits) <= 15          # E.164: at most 15 digits with the country code
    if not 10 <= len(digits) <= 11:
        return False
    groups = [len(g) for g in re.split(r"[ .\-()]+", text) if g]
    national = digits[1:] if groups[0] == 1 else digits
    # North American numbering: 3-3-4 digits (optionally after a 1), area code and exchange 2-9xx
    us = (groups in ([3, 3, 4], [1, 3, 3, 4]) and (groups[0] != 1 or digits[0] == "1")
          and national[0] not in "01" and national[3] not in "01")
    separators = set(re.findall(r"[ .\-]", text))
    if separators == {"."} and not us:
        return False                           # 1.2.3.4-style versions, IP addresses
    return "(" in text or us or digits[0] == "0"


def _has_digit(match: re.Match) -> bool:
    secret = match.group("secret") if "secret" in match.re.groupindex else match.group()
    return any(c.isdigit() for c in secret) and any(c.isalpha() for c in secret)


def _is_secret_value(match: re.Match) -> bool:
    """`password = X`: X is not a placeholder like <your key>, ${VAR}, *****, or 'none'."""
    value = match.group("secret")
    return not (value[0] in "<{$[*" or set(value) <= {"*", "x", "X", "."} or value.lower() in ("none", "null"))


# ----------------------------------------------------------------------------------------------
# Detectors, in priority order: where two overlap, the earlier one wins

Detector = tuple[str, re.Pattern, Callable[[re.Match], bool] | None]

DETECTORS: list[Detector] = [
    ("private_key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*"
                               r"PRIVATE KEY-----|[A-Za-z0-9+/=\s]*)"), None),
    ("token", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), None),
    ("token", re.compile(r"\b[Bb]earer\s+(?P<secret>[A-Za-z0-9\-._~+/]{16,}=*)"), _has_digit),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), None),
    ("aws_key", re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?(?P<secret>[A-Za-z0-9/+=]{40})"), None),
    ("api_key", re.compile(r"\bsk[-_](?:proj-|ant-|live_|test_)?[A-Za-z0-9_-]{20,}"), _has_digit),
    ("api_key", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|xox[abposr]-[A-Za-z0-9-]{10,}"
                           r"|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,})"), None),
    ("api_key", re.compile(r"(?i)\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret|"
                           r"password|passwd)\b['\"]?\s*[:=]\s*['\"]?(?P<secret>[^\s'\",;]{8,})"), _is_secret_value),
    ("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                         r"[A-Za-z]{2,}\b"), None),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), _is_iban),
    ("card", re.compile(r"(?<![\w.+-])\d(?:[ -]?\d){12,18}(?![\w-]|\.\d)"), _is_card),
    ("ssn", re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])"), None),
    ("phone", re.compile(r"(?<![\w+.\-/])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]?\d{1,6}){1,5}"
                         r"|(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]\d{1,6}){1,5})(?![\w]|[.\-/]\d)"), _is_phone),
]


def find_pii(text: str) -> list[Finding]:
    """Non-overlapping personal-data findings in `text`, sorted by position."""
    taken: list[Finding] = []
    for kind, pattern, check in DETECTORS:
        for match in pattern.finditer(text):
            if check is not None and not check(match):
                continue
            group = "secret" if "secret" in pattern.groupindex else 0
            start, end = match.span(group)
            if any(start < f.end and f.start < end for f in taken):
                continue
            taken.append(Finding(kind, start, end, text[start:end]))
    return sorted(taken, key=lambda f: f.start)


def redact(text: str) -> tuple[str, list[str]]:
    """`text` with each finding replaced by its typed placeholder, and the kinds replaced."""
    findings = find_pii(text)
    out, last = [], 0
    for f in findings:
        out += [text[last:f.start], PLACEHOLDERS[f.kind]]
        last = f.end
    return "".join(out) + text[last:], [f.kind for f in findings]


# ----------------------------------------------------------------------------------------------
# Harmful requests

_ASK = r"(?:how (?:do|can|could|would|should|to)|best way to|ways to|help me|teach me|show me|tell me how|" \
       r"explain how|steps to|guide to|instructions (?:for|to|on)|i want to|i need to|plan to|going to|write)"
_MAKE = r"(?:make|build|create|construct|assemble|manufacture|synthesi[sz]e|cook|produce|brew|3d[- ]print)"

HARM_PATTERNS: dict[str, list[str]] = {
    "weapons": [
        rf"\b{_MAKE}\b.{{0,60}}\b(?:(?<!bath )(?<!seed )(?<!photo )bomb|explosives?|ied|pipe ?bomb|molotov|napalm"
        r"|detonator|nerve agent|sarin|vx gas|chemical weapon|bio-?weapon|biological weapon|ricin|anthrax|ghost gun"
        r"|untraceable (?:gun|firearm)|silencer)",
        r"\b(?:convert|modify)\b.{0,40}\b(?:semi[- ]?auto\w*|ar-?15|rifle|gun)\b.{0,30}\b(?:full[- ]?auto|automatic)",
    ],
    "drugs": [
        rf"\b(?:{_MAKE}|extract)\b.{{0,60}}\b(?:meth(?:amphetamine)?|crystal meth|fentanyl|heroin|cocaine|crack cocaine"
        r"|lsd|mdma|ghb)\b",
    ],
    "malware": [
        r"\b(?:write|create|build|code|develop|make|generate)\b.{0,60}\b(?:malware|ransomware|keylogger|computer virus"
        r"|trojan|botnet|rootkit|spyware|credential stealer|worm that)\b",
        r"\b(?:hack|break) into\b.{0,40}\b(?:account|email|computer|network|phone|server|wi-?fi|database|website)",
        r"\bsteal\b.{0,40}\b(?:passwords?|credentials|credit cards?|identit(?:y|ies)|bank details)",
        r"\b(?:launch|run|perform)\b.{0,30}\b(?:ddos|denial[- ]of[- ]service)\b",
    ],
    "violence": [
        rf"\b{_ASK}\b.{{0,40}}\b(?:kill|murder|poison|assassinate|stab|strangle|kidnap|torture|maim)\b.{{0,40}}"
        r"\b(?:someone|somebody|a person|people|my|him|her|them|neighbou?r|wife|husband|boss|teacher|child|kid|"
        r"classmates?|coworkers?|family)\b",
        r"\bget away with (?:murder|killing)\b",
        r"\bdispose of (?:a|the) (?:body|corpse)\b",
    ],
    "self_harm": [
        rf"\b{_ASK}\b.{{0,40}}\b(?:kill myself|commit suicide|end my (?:own )?life|hurt myself|cut myself|self[- ]harm"
        r"|overdose on)\b",
        r"\b(?:painless|quickest|easiest) way to (?:die|kill myself|end it)\b",
    ],
    "fraud": [
        rf"\b{_ASK}\b.{{0,60}}\b(?:launder money|money laundering|counterfeit (?:money|bills|currency)|forge (?:a |an )?"
        r"(?:signature|document|check|cheque|passport)|phishing (?:e-?mail|page|site|message)|commit fraud|"
        r"evade (?:taxes|tax)|fake (?:id|passport|driver'?s licen[cs]e))",
        r"\bwrite\b.{0,30}\bphishing\b",
    ],
    "sexual_minors": [
        r"\b(?:child|children|minors?|underage|kids?|preteens?|(?:1[0-7]|[1-9])[- ]year[- ]olds?)\b.{0,60}"
        r"\b(?:sex|sexual|sexually|nudes?|naked|porn\w*|erotic)\b",
        r"\b(?:sex|sexual|sexually|nudes?|naked|porn\w*|erotic)\b.{0,60}\b(?:child|children|minors?|underage|kids?"
        r"|preteens?|(?:1[0-7]|[1-9])[- ]year[- ]olds?)\b",
    ],
    "terrorism": [
        r"\b(?:recruit\w*|propaganda)\b.{0,40}\b(?:isis|al[- ]qaeda|terrorist)",
        r"\bplan(?:ning)? (?:a |an )?(?:terrorist )?(?:attack|bombing|mass shooting)\b",
        r"\b(?:join|support)\b.{0,20}\b(?:isis|al[- ]qaeda|terrorist (?:group|organi[sz]ation|cell))",
    ],
    "stalking": [
        r"\b(?:find|track|locate|get)\b.{0,40}\b(?:home address|location|phone number|whereabouts)\b.{0,30}\b"
        r"(?:of )?(?:my ex|an ex|someone|a person|this person|a stranger|a girl|a guy|a woman|a man)\b",
        r"\b(?:spy on|secretly track|install spyware on)\b.{0,40}\b(?:wife|husband|partner|girlfriend|boyfriend|ex|"
        r"someone|phone)\b",
    ],
}

_HARM = {category: [re.compile(p, re.IGNORECASE | re.DOTALL) for p in patterns]
         for category, patterns in HARM_PATTERNS.items()}
# Self-harm with a harmless grammatical object ("kill a process", "kill the lights") is excluded by
# the object lists above; "how to kill time" never reaches them.


def harm_categories(prompt: str) -> list[str]:
    """Harm categories whose patterns match the prompt (empty: looks benign)."""
    return [category for category, patterns in _HARM.items() if any(p.search(prompt) for p in patterns)]


def harmful_answered(prompt: str, responses: list[str]) -> list[str]:
    """Categories of a harmful prompt that some non-empty response answers without refusing."""
    categories = harm_categories(prompt)
    if not categories:
        return []
    answered = any(r.strip() and not is_refusal(r) for r in responses)
    return categories if answered else []
