/*
 * Tokenizers built from a GGUF file's tokenizer.ggml.* metadata. SentencePiece BPE (model
 * "llama", Gemma's): spaces become U+2581, pieces merge by score, unknown characters fall back to
 * <0xXX> byte pieces; user-defined pieces (Gemma's runs of newlines, spaces, tabs, HTML tags)
 * are matched in the text as they stand, control pieces only when asked.
 *
 * Byte-level BPE tokenizer (GPT-2 style, SmolLM2's):
 * the pre-tokenizer splits every digit on its own (SmolLM's "smollm" pre-type) and then applies
 * the GPT-2 split rules; merges are applied by rank. Special (control) tokens such as
 * <|im_start|> are recognised in the text when asked.
 *
 * The tokenizer keeps pointers into the GGUF mapping: close it before the gguf.
 */
#ifndef ICERUN_TOK_H
#define ICERUN_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

struct tok;

int tok_new(const struct gguf *g, struct tok **ret);
void tok_free(struct tok *t);

int tok_vocab_size(const struct tok *t);
int tok_bos(const struct tok *t);
int tok_eos(const struct tok *t);
/* Whether prompts start with BOS (tokenizer.ggml.add_bos_token; tok_encode never adds it). */
bool tok_add_bos(const struct tok *t);
/* Id of an exact token string (special tokens included), or -ENOENT. */
int tok_find(const struct tok *t, const char *s);

/*
 * Encodes len bytes of text into out (at most cap ids). special: parse control tokens written in
 * the text. Returns the number of ids, -ENOSPC if cap is too small, -ENOMEM.
 */
int tok_encode(const struct tok *t, const char *text, size_t len, bool special, int32_t *out,
	       size_t cap);

/* Writes the bytes of token id into buf (no NUL); returns the byte count, -EINVAL, -ENOSPC. */
int tok_decode(const struct tok *t, int32_t id, char *buf, size_t cap);

#endif
