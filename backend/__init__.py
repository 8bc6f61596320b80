"""The Label Studio side of FocusCut: an ML backend that serves click-to-mask and queues fine-tuning."""
