"""A/B harness: run a detail pass in several arms on ComfyUI servers, score each output against its
reference, report with paired bootstrap intervals, and optionally store the best arm as a vault's tuned
defaults. config -> arms (graph edits) -> run (dispatch) -> scores -> report -> tune."""
