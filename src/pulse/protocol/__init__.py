"""The PULSE protocol: scenarios (fine-tuned, pre-trained, sustainability) and the resumable run directory."""
