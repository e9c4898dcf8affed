"""Images as documents: a caption model turns each image into text to embed.

Writers: ``hf:PATH`` (a local transformers image-to-text or vision-language model, e.g.
BLIP or LLaVA; loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText``, the
chat template and prompt used when the processor has one) and ``openai`` (an
OpenAI-compatible vision endpoint; the image goes as a base64 data URL). Captions are
cached by the image's content (SHA-256) and the writer's settings, in one append-only
JSONL file, so re-indexing captions nothing twice.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from embedrag.engine.core.errors import ConfigError, api_key_from_environment, redact

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Describe this image in one or two sentences for a search index: what it shows, any text in it."
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def default_caption_cache() -> Path:
    from embedrag.engine.encoding.cache import cache_root

    return cache_root() / "captions"


class CaptionCache:
    """(writer key, image SHA-256) -> caption, in ``folder/captions.jsonl``; each new caption
    is appended and flushed, so an interrupted run keeps what it captioned."""

    def __init__(self, folder: Path | None):
        self.path = folder / "captions.jsonl" if folder else None
        self._captions: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        if self.path and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._captions[(row["key"], row["sha256"])] = row["caption"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line of an interrupted run

    def get(self, key: str, digest: str) -> str | None:
        return self._captions.get((key, digest))

    def put(self, key: str, digest: str, caption: str) -> None:
        with self._lock:
            self._captions[(key, digest)] = caption
            if self.path is None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps({"key": key, "sha256": digest, "caption": caption}, ensure_ascii=False) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:  # a cache that cannot be written only costs time
                logger.warning("could not write the caption cache %s: %s", self.path, exc)


class HFCaptionWriter:
    """A local transformers image-to-text / vision-language model."""

    def __init__(self, path: str, *, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 48,
                 device: str | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from embedrag.engine.encoding.encoder import default_device, quiet_transformers
        from embedrag.engine.encoding.models import resolve_model

        folder = resolve_model(path).path
        try:
            with quiet_transformers():
                self.processor = AutoProcessor.from_pretrained(folder)
                self.model = AutoModelForImageTextToText.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot load the caption model {path}: {str(exc).splitlines()[0]}") from None
        self.device = device or default_device()
        self.model.to(self.device).eval()
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.name = f"hf:{folder}"
        weights = sorted((p.name, p.stat().st_size) for p in Path(folder).glob("*.safetensors"))
        self.key = hashlib.sha256(json.dumps([self.name, weights, prompt, max_new_tokens]).encode()).hexdigest()[:24]

    def _inputs(self, image):
        template = getattr(self.processor, "chat_template", None)
        if template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            return self.processor(images=image, text=text, return_tensors="pt")
        return self.processor(images=image, return_tensors="pt")

    def caption(self, image, data: bytes, path: Path) -> str:
        import torch

        inputs = {k: v.to(self.device) for k, v in self._inputs(image).items()}
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_length = inputs["input_ids"].shape[1] if "input_ids" in inputs and getattr(
            self.processor, "chat_template", None) else 0
        return self.processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)[0].strip()


class OpenAICaptionWriter:
    """An OpenAI-compatible vision chat endpoint; the key from the environment, never shown."""

    def __init__(self, model: str, *, base_url: str | None = None, prompt: str = DEFAULT_PROMPT,
                 max_tokens: int = 96, timeout: float = 120.0, max_retries: int = 3):
        from embedrag.engine.llm.rag import openai_client, shown_url

        self.model, self.base_url = model, base_url or "https://api.openai.com/v1"
        self._shown_url, self._key = shown_url(self.base_url), api_key_from_environment()
        self.client = openai_client(self.base_url, self._key, timeout=timeout, max_retries=max_retries)
        self.prompt, self.max_tokens = prompt, max_tokens
        self.name = f"openai:{model}"
        self.key = hashlib.sha256(json.dumps([self.name, self._shown_url, prompt, max_tokens]).encode()).hexdigest()[:24]

    def __repr__(self) -> str:
        return f"OpenAICaptionWriter(model={self.model!r}, base_url={self._shown_url!r})"

    def caption(self, image, data: bytes, path: Path) -> str:
        import openai

        from embedrag.engine.llm.rag import LLMError

        url = f"data:{_MIME.get(path.suffix.lower(), 'image/png')};base64,{base64.b64encode(data).decode('ascii')}"
        content: list[dict[str, Any]] = [{"type": "text", "text": self.prompt},
                                         {"type": "image_url", "image_url": {"url": url}}]
        try:
            reply = self.client.chat.completions.create(model=self.model, max_tokens=self.max_tokens, temperature=0.0,
                                                        messages=[{"role": "user", "content": content}])
            return (reply.choices[0].message.content or "").strip()
        except openai.APIStatusError as exc:
            raise LLMError(redact(f"caption server {self._shown_url} answered HTTP {exc.status_code}",
                                  (self._key,))) from None
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise LLMError(f"cannot reach the caption server at {self._shown_url}") from None


class ImageCaptioner:
    """``captioner(path) -> caption`` for the document readers: reads and checks the image,
    answers from the cache or asks the writer (``calls`` counts the writer's work)."""

    def __init__(self, writer, cache: CaptionCache):
        self.writer, self.cache = writer, cache
        self.name = writer.name
        self.calls = 0

    def __call__(self, path: Path) -> str | None:
        from PIL import Image, UnidentifiedImageError

        try:
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()  # a truncated or corrupt file fails here, before any model runs
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            logger.warning("%s: not a readable image (%s); skipped", path, str(exc).splitlines()[0] if str(exc) else
                           type(exc).__name__)
            return None
        digest = hashlib.sha256(data).hexdigest()
        cached = self.cache.get(self.writer.key, digest)
        if cached is not None:
            return cached
        caption = self.writer.caption(image, data, Path(path))
        self.calls += 1
        if not caption:
            logger.warning("%s: the caption model wrote nothing; skipped", path)
            return None
        self.cache.put(self.writer.key, digest, caption)
        return caption


def make_captioner(caption_model: str | None = None, caption_llm: str | None = None, *,
                   llm_model: str | None = None, base_url: str | None = None, prompt: str | None = None,
                   cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                   device: str | None = None) -> ImageCaptioner | None:
    """``caption_model`` ``hf:PATH`` or ``caption_llm`` ``openai`` (with ``llm_model``); None
    when neither is given."""
    if caption_model and caption_llm:
        raise ConfigError("give --caption-model or --caption-llm, not both")
    prompt = prompt or DEFAULT_PROMPT
    if caption_model:
        if not caption_model.startswith("hf:") or len(caption_model) <= 3:
            raise ConfigError(f"--caption-model must be hf:PATH, got {caption_model!r}")
        writer: Any = HFCaptionWriter(caption_model[3:], prompt=prompt, device=device)
    elif caption_llm:
        if caption_llm != "openai":
            raise ConfigError(f"--caption-llm must be openai, got {caption_llm!r}")
        if not llm_model:
            raise ConfigError("--caption-llm openai needs --caption-llm-model (the vision model the server knows)")
        writer = OpenAICaptionWriter(llm_model, base_url=base_url, prompt=prompt)
    else:
        return None
    folder = (Path(cache_dir) if cache_dir else default_caption_cache()) if use_cache else None
    return ImageCaptioner(writer, CaptionCache(folder))
