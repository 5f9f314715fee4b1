/*
 * The storage dtype of K and V: the one dtype enum of IceCache, public so that clients name it
 * (struct ice_model_shape.dtype) and every layer of the runtime uses the same values.
 */
#ifndef ICECACHE_DTYPE_H
#define ICECACHE_DTYPE_H

#ifdef __cplusplus
extern "C" {
#endif

/* Storage dtype of K and V. Search arithmetic is float32 whatever the storage. */
enum ice_dtype {
	ICE_DTYPE_F32 = 0,
	ICE_DTYPE_F16 = 1,
	ICE_DTYPE_BF16 = 2,
};

#ifdef __cplusplus
}
#endif

#endif
