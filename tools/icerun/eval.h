/* icerun eval: passkey, multi-key needle and attention-mass recall under attention modes. */
#ifndef ICERUN_EVAL_H
#define ICERUN_EVAL_H

#include <stdbool.h>

/* Wraps a user message in SmolLM2's chat template (or copies it when chat is false). */
int eval_chat_prompt(const char *user, bool chat, char **ret);
int eval_argmax(const float *x, int n);
int eval_main(int argc, char **argv);

#endif
