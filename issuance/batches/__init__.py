"""Production batches: selection, data preparation, personalisation, printing, quality check."""
