package adminapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// MaxBodyBytes bounds a request body; a larger one is answered 413.
const MaxBodyBytes = 1 << 20

// ReadBody reads r's body, at most MaxBodyBytes of it. When it cannot, it
// answers 413 (too large) or 400 (cut short or too slow), counts the
// request as rejected and returns false.
func ReadBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err == nil {
		return body, true
	}
	if tooBig := (*http.MaxBytesError)(nil); errors.As(err, &tooBig) {
		Reject(w, r, http.StatusRequestEntityTooLarge, BodyTooLarge, fmt.Errorf("body larger than %d bytes", tooBig.Limit))
	} else {
		Reject(w, r, http.StatusBadRequest, BodyReadFailed, fmt.Errorf("read body: %w", err))
	}
	return nil, false
}

// RejectBody answers 400 with errs for a request whose body (read by
// ReadBody) the handler refused: counted as malformed_body when the body
// is not JSON at all, else as invalid_request (an empty body, JSON of the
// wrong shape or values, or bad query parameters).
func RejectBody(w http.ResponseWriter, r *http.Request, body []byte, errs ...error) {
	reason := InvalidRequest
	if len(bytes.TrimSpace(body)) > 0 && !json.Valid(body) {
		reason = MalformedBody
	}
	Reject(w, r, http.StatusBadRequest, reason, errs...)
}

// Reject answers status with errs and counts the request as rejected for
// reason. Answers that depend on the state rather than on the request (a
// missing service, a conflict) are not rejections: use WriteErrors.
func Reject(w http.ResponseWriter, r *http.Request, status int, reason Reason, errs ...error) {
	metricsOf(r).reject(reason)
	WriteErrors(w, status, errs...)
}
