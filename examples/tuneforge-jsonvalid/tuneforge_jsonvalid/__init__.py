"""tuneforge-jsonvalid: the `json_valid` evaluation metric for tuneforge."""
