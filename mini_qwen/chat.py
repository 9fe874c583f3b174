"""Qwen chat format, SFT label masks and answer-keeping truncation.

A conversation is rendered as
    <|im_start|>system\n{system}<|im_end|>\n          (only when the data has a system turn)
    <|im_start|>user\n{question}<|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>\n
Trainable tokens (label = token id) are exactly each assistant's content plus the `<|im_end|>`
that closes it, so the model learns to answer and to stop; headers, user and system turns
and the newline after `<|im_end|>` are masked (-100).

We tokenize each message's content on its own and join the pieces with the fixed header
ids. That is what generation sees too: the model starts writing right after the
`assistant\n` header, so no BPE merge can straddle the prompt/answer border. (The original
project searched for the response key instead, and its key `[198]` = "\n" matched inside
answers, leaving about half the answer tokens untrained.)
"""

from dataclasses import dataclass

IGNORE = -100
# The one table of role names data may use (BAAI / ShareGPT: human, gpt; OpenAI: user, assistant; both: system)
# -> the role trained. A tool's result (OpenAI `tool`, ShareGPT `observation`, the older `function`) becomes a user
# turn wrapped in <tool_response>, as Qwen2.5's official template renders it; ShareGPT's `function_call` is the
# assistant's turn.
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
            "function_call": "assistant", "tool": "tool", "observation": "tool", "function": "tool"}
TOOL_RESPONSE = "<tool_response>\n{}\n</tool_response>"


def format_messages(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The chat text of a conversation so far ([system], user, assistant, ..., user): the text
    `encode_conversations` trains on for those turns. The one renderer of the format: inference, eval,
    serving and lm-eval's chat prompts all come through here.

    add_generation_prompt: end with the assistant header (the model answers next). Without it a last
    assistant message stays open (no <|im_end|>), as lm-eval asks when it scores choices inside the answer.
    """
    turns = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        return "".join(turns) + "<|im_start|>assistant\n"
    if messages and messages[-1]["role"] == "assistant":
        turns[-1] = turns[-1].removesuffix("<|im_end|>\n")
    return "".join(turns)


# The same format as a Jinja chat template, for runtimes that render prompts themselves from the template a
# model carries: every tokenizer load_tokenizer loads gets it, so every saved checkpoint's chat_template.jinja is
# this one (transformers' apply_chat_template, vLLM, lm-eval's chat mode), and the exported GGUF embeds it
# (llama.cpp, LM Studio). Unlike the official Qwen2.5 template it adds no default system prompt: SFT data without
# a system turn was trained without one; a system message is rendered as the first turn, as SFT, DPO and serve
# encode it. With add_generation_prompt false every turn is closed, as in training (the Hugging Face convention).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def format_prompt(question: str, system: str | None = None) -> str:
    """The text a chat model is given at inference time for one question, ending with the assistant header."""
    head = [{"role": "system", "content": system}] if system else []
    return format_messages(head + [{"role": "user", "content": question}])


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `format_messages(messages)` built the way training builds them: each content tokenized
    on its own and joined with the fixed header ids (tokenizing the whole text could merge a content's first
    characters with the header's newline, a sequence the model never saw)."""
    ct = ChatTokens.of(tokenizer)
    ids = []
    for m in messages:
        ids += _turn(ct, m["role"], tokenizer(m["content"], add_special_tokens=False)["input_ids"])[0]
    return ids + ct.role_header["assistant"]


def parse_turn(turn: dict) -> tuple[str | None, str | None, object]:
    """(role, text, role as written) of a `from`/`value` (Infinity-Instruct) or `role`/`content` record;
    role is None when it is not one we know."""
    raw_role = turn.get("from", turn.get("role"))
    content = turn.get("value", turn.get("content"))
    role = ROLE_MAP.get(str(raw_role).strip().lower()) if raw_role is not None else None
    return role, content, raw_role


class BadConversation(ValueError):
    """A row that cannot be trained on; the message says why."""


def normalize_messages(conversation, first_turn_only: bool = False) -> list[dict]:
    """`from`/`value` (BAAI, ShareGPT) or `role`/`content` (OpenAI) turns -> [{role, content}], validated; role
    names through ROLE_MAP, consecutive tool results joined into one user turn (as Qwen2.5's template does)."""
    if conversation is None or len(conversation) == 0:
        raise BadConversation("empty conversation")
    messages = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, dict):
            raise BadConversation(f"turn {i} is not a {{from, value}} record")
        role, content, raw_role = parse_turn(turn)
        if role is None:
            raise BadConversation(f"turn {i} has unknown role {raw_role!r} (expected {'/'.join(ROLE_MAP)})")
        if content is None:
            raise BadConversation(f"turn {i} ({raw_role}) has no text")
        if role == "system" and i > 0:
            raise BadConversation(f"turn {i} is a system turn after the start")
        if role == "tool":
            content = TOOL_RESPONSE.format(content)
            if messages and messages[-1].get("tool"):
                messages[-1]["content"] += "\n" + content
                continue
            messages.append({"role": "user", "content": content, "tool": True})
            continue
        messages.append({"role": role, "content": content})
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    body = [m for m in messages if m["role"] != "system"]
    for i, m in enumerate(body):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise BadConversation(f"turns do not alternate user/assistant (turn {i} is {m['role']})")
    if not body or body[-1]["role"] != "assistant":
        raise BadConversation("conversation does not end with an assistant answer")
    if not any(m["content"].strip() for m in body if m["role"] == "assistant"):
        raise BadConversation("every assistant answer is empty")
    if first_turn_only:
        system = [m for m in messages if m["role"] == "system"]
        messages = system + body[:2]
    return messages


@dataclass(frozen=True)
class ChatTokens:
    """Fixed ids of the chat markup, looked up once per tokenizer."""
    im_start: int
    im_end: int
    newline: list[int]
    role_header: dict  # role -> ids of "<|im_start|>{role}\n"

    @classmethod
    def of(cls, tokenizer):
        enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        headers = {role: enc(f"<|im_start|>{role}\n") for role in ("system", "user", "assistant")}
        return cls(tokenizer.convert_tokens_to_ids("<|im_start|>"), tokenizer.convert_tokens_to_ids("<|im_end|>"),
                   enc("\n"), headers)


def _turn(ct: ChatTokens, role: str, content_ids: list[int]) -> tuple[list[int], list[int]]:
    ids = ct.role_header[role] + content_ids + [ct.im_end] + ct.newline
    if role == "assistant":
        n_head = len(ct.role_header[role])
        labels = [IGNORE] * n_head + content_ids + [ct.im_end] + [IGNORE] * len(ct.newline)
    else:
        labels = [IGNORE] * len(ids)
    return ids, labels


def build_example(ct: ChatTokens, messages: list[dict], content_ids: list[list[int]], max_length: int,
                  min_prompt_tokens: int = 16) -> tuple[list[int], list[int], bool]:
    """Token ids and labels of one conversation, cut to `max_length` so that answers survive.

    Returns (input_ids, labels, truncated). When too long: drop the oldest user/assistant
    exchanges first (a leading system turn stays); if the last exchange alone is still too
    long, cut the head of its user text (keeping at least `min_prompt_tokens` of it), and
    only then the tail of the answer. labels has no trainable token when nothing fits.
    """
    system = [(m, c) for m, c in zip(messages, content_ids) if m["role"] == "system"]
    body = [(m, c) for m, c in zip(messages, content_ids) if m["role"] != "system"]
    exchanges = [body[i:i + 2] for i in range(0, len(body), 2)]

    def render(turns):
        ids, labels = [], []
        for m, c in turns:
            t_ids, t_labels = _turn(ct, m["role"], c)
            ids += t_ids
            labels += t_labels
        return ids, labels

    sys_ids, sys_labels = render(system)
    rendered = [render(ex) for ex in exchanges]
    total = len(sys_ids) + sum(len(r[0]) for r in rendered)
    if total <= max_length:
        ids = sys_ids + [t for r in rendered for t in r[0]]
        labels = sys_labels + [t for r in rendered for t in r[1]]
        return ids, labels, False

    # 1. drop whole exchanges from the start while more than one is left
    while len(rendered) > 1 and total > max_length:
        total -= len(rendered.pop(0)[0])
    if total <= max_length:
        return sys_ids + [t for r in rendered for t in r[0]], sys_labels + [t for r in rendered for t in r[1]], True

    # 2. one exchange left: cut the user text's head, then the answer's tail
    (user, user_ids), (_, answer_ids) = exchanges[-1]
    user_fixed = len(ct.role_header["user"]) + 1 + len(ct.newline)
    answer_fixed = len(ct.role_header["assistant"]) + 1 + len(ct.newline)
    room = max_length - len(sys_ids) - user_fixed - answer_fixed
    keep_user = min(len(user_ids), max(min_prompt_tokens, room - len(answer_ids)))
    keep_answer = max(0, min(len(answer_ids), room - keep_user))
    u_ids, u_labels = _turn(ct, "user", user_ids[len(user_ids) - keep_user:])
    a_ids, a_labels = _turn(ct, "assistant", answer_ids[:keep_answer])
    ids, labels = sys_ids + u_ids + a_ids, sys_labels + u_labels + a_labels
    if keep_answer < len(answer_ids):  # answer cut: the closing <|im_end|> is not where the answer ends
        labels[len(ids) - 1 - len(ct.newline)] = IGNORE
    ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels, True


def encode_conversations(tokenizer, conversations: list[list[dict]], max_length: int) -> dict:
    """Batch version of build_example: every message content tokenized in one Rust call."""
    ct = ChatTokens.of(tokenizer)
    flat = [m["content"] for conv in conversations for m in conv]
    encoded = tokenizer.backend_tokenizer.encode_batch_fast(flat, add_special_tokens=False) if flat else []
    out = {"input_ids": [], "labels": [], "truncated": []}
    pos = 0
    for conv in conversations:
        content_ids = [encoded[pos + i].ids for i in range(len(conv))]
        pos += len(conv)
        ids, labels, truncated = build_example(ct, conv, content_ids, max_length)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["truncated"].append(truncated)
    return out
