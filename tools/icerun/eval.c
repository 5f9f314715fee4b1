#include "eval.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHAT_SYSTEM "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, " \
		    "trained by Hugging Face<|im_end|>\n"

int eval_chat_prompt(const char *user, bool chat, char **ret)
{
	size_t n = strlen(user) + 256;
	char *s = malloc(n);

	if (!s)
		return -ENOMEM;
	if (chat)
		snprintf(s, n, CHAT_SYSTEM "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n",
			 user);
	else
		snprintf(s, n, "%s", user);
	*ret = s;
	return 0;
}

int eval_argmax(const float *x, int n)
{
	int i, b = 0;

	for (i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

int eval_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return 2;
}
