"""The dataset layer: cell values and drop rules (`values`), raw tables (`formats`,
`tables`, `csvfile`), the pre-flight checks (`validate`, `scan`), per-user records
(`records`), their preprocessing (`preprocess`, Beam; `prepare`, the same transforms
in one process) and the tf.data input pipeline over the records (`input`).

Nothing is imported here, so ``import clue_keras.data.records`` stays cheap.
"""
