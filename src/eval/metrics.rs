//! mAP and CMC of a query × gallery distance matrix, with the reference protocol.
