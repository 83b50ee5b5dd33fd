"""seqio task registrations; a run imports one with MIXTURE_OR_TASK_MODULE (e.g. 'tasks.demo')."""
