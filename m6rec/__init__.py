"""m6rec: M6-Rec style recommenders — behaviour as text, one pretrained language model."""
