/* icerun eval: passkey, multi-key needle and attention-mass recall under attention modes. */
#ifndef ICERUN_EVAL_H
#define ICERUN_EVAL_H

#include <stdbool.h>
#include <stdint.h>

#include "tok.h"

/* Wraps a user message in SmolLM2's chat template (or copies it when chat is false). */
int eval_chat_prompt(const char *user, bool chat, char **ret);
int eval_argmax(const float *x, int n);
/*
 * One passkey case as `icerun eval` builds it (chat template, filler "austen" or "repeat", the
 * key at 50% depth, the question and the answer prefix), `length` tokens in total; seed as
 * eval's --seed (the key of its first case). austen: the text file (unused for "repeat").
 * On success *ret (the caller frees it) holds *ret_n == length ids. -EINVAL (unknown filler, a
 * length too short or longer than the filler), -ENOENT (no Austen text), -ENOMEM.
 */
int eval_passkey_prompt(const struct tok *t, const char *filler, const char *austen, int length,
			unsigned seed, int32_t **ret, int *ret_n);
int eval_main(int argc, char **argv);

#endif
